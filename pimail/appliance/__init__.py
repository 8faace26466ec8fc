"""The appliance layer: health model, LEDs, systemd, status socket/page, pairing, metrics, doctor."""
