#!/bin/sh
# Prints the event-socket password for voiceai_vars.xml (exec-set): VOICEAI_ESL_PASSWORD.
# When it is empty, the public default or unsafe to paste into XML, print a random one instead:
# mod_event_socket turns an empty password into the default, and nobody must log in with that.
password="${VOICEAI_ESL_PASSWORD:-}"
reason=""
if [ -z "$password" ]; then
    reason="is not set"
elif [ "$(printf '%s' "$password" | tr '[:upper:]' '[:lower:]')" = "cluecon" ]; then
    reason="is FreeSWITCH's public default"
else
    case "$password" in
        *[!A-Za-z0-9._~+=:@%^*,/-]*) reason="has characters that break the XML configuration" ;;
    esac
fi
if [ -n "$reason" ]; then
    echo "voiceai: VOICEAI_ESL_PASSWORD $reason; the event socket gets a random password" >&2
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
else
    printf '%s' "$password"
fi
