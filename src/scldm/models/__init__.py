"""Networks of SCLDM: speech encoders (the Speech2Face one; GE2E with a head, `ge2e`; the
choice between them, `speech`), VGG-16 face encoder and its mirrored decoder, the
stage-1 wrapper, shared blocks. `scldm.models.perceptual` (LPIPS) is imported on demand."""

from scldm.models.contrastive import SpeechFaceModel
from scldm.models.face_decoder import FACE_DECODER_PRESETS, FaceDecoder
from scldm.models.face_encoder import FACE_ENCODER_PRESETS, FaceEncoder, FaceEncoderOutput
from scldm.models.ge2e import GE2E_PRESETS, GE2ESpeechEncoder
from scldm.models.speech import SPEECH_SIDES, build_speech, component_class
from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS, SpeechEncoder, SpeechEncoderOutput

__all__ = [
    "FACE_DECODER_PRESETS",
    "FACE_ENCODER_PRESETS",
    "GE2E_PRESETS",
    "SPEECH_SIDES",
    "SPEECH_ENCODER_PRESETS",
    "FaceDecoder",
    "FaceEncoder",
    "FaceEncoderOutput",
    "GE2ESpeechEncoder",
    "SpeechEncoder",
    "SpeechEncoderOutput",
    "SpeechFaceModel",
    "build_speech",
    "component_class",
]
