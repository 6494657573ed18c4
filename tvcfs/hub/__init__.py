"""A hub hosting many tvcfs repositories: users and tokens (:mod:`.state`), the
repositories and uploads (:mod:`.core`), the HTTP API including the Hugging Face Hub
subset (:mod:`.app`), and the server (:mod:`.server`). Starlette and Hypercorn are
imported only by :mod:`.app` and :mod:`.server` (the ``hub`` extra). docs/hub.md."""
