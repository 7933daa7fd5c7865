"""`mmadapt ui`: a small web app (FastAPI + one static page) over chat, training, evaluation, merging, editing and lineage."""
