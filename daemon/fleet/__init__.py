"""Doors in a fleet: the door's link to an MQTT broker (Eclipse Mosquitto or any MQTT 3.1.1 broker).

settings   the `mqtt:` config section, the topic layout and a configured paho client
cursor     the event cursor the link keeps on disk (mqtt.db beside the event log)
publisher  event-log rows out, QoS 1, from the persisted cursor of the last row the broker acknowledged
discovery  Home Assistant MQTT discovery payloads
commands   `<prefix>/command` payloads in: unlock, lock, reload
sync       signed gallery bundles from the front desk, verified and applied all or nothing
link       the running connection that ties them together, started and stopped by the door service

The door loop never waits on the network: it writes events to SQLite and the link reads them from
there on its own threads.
"""
