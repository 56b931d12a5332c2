"""Runtime helpers at the bottom of the package: device and precision, seeding, atomic file
writes, worker processes. Nothing here imports another dtune package."""
