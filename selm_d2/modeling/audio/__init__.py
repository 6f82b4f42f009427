"""Audio encoder (VGGish) run stage by stage like the visual encoders."""
from .vggish import VGGish, build_vggish, load_vggish_weights
