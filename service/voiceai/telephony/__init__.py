"""Telephony: what speaks FreeSWITCH (mod_audio_fork websocket, event socket)."""
