"""Networks of SCLDM: speech encoder, VGG-16 face encoder and its mirrored decoder, the
stage-1 wrapper, shared blocks. `scldm.models.perceptual` (LPIPS) is imported on demand."""

from scldm.models.contrastive import SpeechFaceModel
from scldm.models.face_decoder import FACE_DECODER_PRESETS, FaceDecoder
from scldm.models.face_encoder import FACE_ENCODER_PRESETS, FaceEncoder, FaceEncoderOutput
from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS, SpeechEncoder, SpeechEncoderOutput

__all__ = [
    "FACE_DECODER_PRESETS",
    "FACE_ENCODER_PRESETS",
    "SPEECH_ENCODER_PRESETS",
    "FaceDecoder",
    "FaceEncoder",
    "FaceEncoderOutput",
    "SpeechEncoder",
    "SpeechEncoderOutput",
    "SpeechFaceModel",
]
