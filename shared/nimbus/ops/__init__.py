"""Operating Nimbus: backup and restore of every store (``backup``)."""
