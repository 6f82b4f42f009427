"""Audio encoder: VGGish, one embedding per 0.96 s log-mel example."""
from .vggish import VGGish, load_vggish_weights
