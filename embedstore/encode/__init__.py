"""`embedstore encode`: embed a store's videos (or reports) with one encoder, on this machine or on Ray.

- job.py: what every run shares (provenance and masked preparer, pending videos, run record, batch commit)
- reader.py: decode + prepare ahead in threads (also used by training, the view classifier, the leaderboard)
- local.py: the local engine (`encode_store`); ray.py: the Ray Data engine (`encode_store_ray`, imported on use)
- engines.py: `encode_with`, the engine `embedstore encode --engine` chose, then the index refresh
"""
from embedstore.encode.job import EncodeSummary, pending_videos, store_encoding, write_batch
from embedstore.encode.local import ShapeBuckets, encode_store
from embedstore.encode.reader import decode_workers, prepare_one, prepared_stream

__all__ = ["EncodeSummary", "ShapeBuckets", "decode_workers", "encode_store", "pending_videos", "prepare_one",
           "prepared_stream", "store_encoding", "write_batch"]
