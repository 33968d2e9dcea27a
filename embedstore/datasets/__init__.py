"""Data sets: EchoNet-Dynamic import, the phantom cohort, folder ingest, released embeddings."""
