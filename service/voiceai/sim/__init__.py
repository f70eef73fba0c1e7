"""A FreeSWITCH emulator (mod_audio_fork client, event socket server) for tests and demos."""
