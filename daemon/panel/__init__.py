"""Beside the building's access-control panel: card credentials and their Wiegand formats
(formats), the Wiegand wire in both directions (wiegand), the OSDP reader (osdp_reader), and the
one `Output` the door loop hands its decisions to (output)."""
