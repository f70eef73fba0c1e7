"""Audio: PCM byte streams, rate conversion, file decoding, turn detection."""
