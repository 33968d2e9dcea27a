"""Reading echo videos (AVI, MP4, DICOM) into RGB frames, and preparing frames for encoders."""
from embedstore.video.read import Video, read_video, VIDEO_SUFFIXES

__all__ = ["Video", "read_video", "VIDEO_SUFFIXES"]
