"""Offline checks of the deployment files (the FreeSWITCH overlay, .env), run before `up`.

Nothing here runs inside the service: these modules validate what gets deployed.
"""
