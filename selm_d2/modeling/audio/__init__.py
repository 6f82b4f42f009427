"""Audio encoder (VGGish) run stage by stage like the visual encoders."""
from .vggish import VGGish, load_vggish_weights
