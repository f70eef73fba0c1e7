"""voiceai: an AI receptionist that answers RingCentral calls through FreeSWITCH."""

__version__ = "0.1.0"
