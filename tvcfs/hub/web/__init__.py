"""The hub's web pages (docs/hub.md, "Web pages"): ``views`` (routes and page
handlers), ``charts`` (server-rendered SVG), ``stats`` (per-CID caches of the
figures the pages show), ``session`` (login sessions), ``templates/`` (Jinja2)."""
