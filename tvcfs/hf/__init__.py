"""The Hugging Face cache: importing it (:mod:`tvcfs.hf.cache`, ``tvcfs import-hf``)
and the names shared with the mount's ``MNT/hf/`` view (:mod:`tvcfs.hf.layout`).
See docs/repository.md ("Importing the Hugging Face cache") and docs/mount.md
("The Hugging Face cache view")."""
