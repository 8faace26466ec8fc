"""The appliance layer: LEDs, systemd, control socket, status page, pairing, metrics, clock trust, the
loop-lag monitor, doctor (the health model they read is the ground floor's ``pimail.health``)."""
