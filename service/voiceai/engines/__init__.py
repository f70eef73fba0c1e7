"""Engines: speech to text (and later LLM, TTS), each behind a small Protocol."""
