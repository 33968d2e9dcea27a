"""The tests' DICOM writer lives in the package (embedstore.video.dicom_write) so the phantom can use it too."""
from embedstore.video.dicom_write import DEFAULT_PHI, SYNTAXES, US_IMAGE, US_MULTIFRAME, write_dicom

__all__ = ["DEFAULT_PHI", "SYNTAXES", "US_IMAGE", "US_MULTIFRAME", "write_dicom"]
