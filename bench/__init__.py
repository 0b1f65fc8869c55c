"""The hashserver benchmark suite (``python -m bench``).

It measures the real server as users run it (a ``hashserver`` subprocess with
Sanic workers), driven by a real HTTP load generator, side by side with the
ceilings measured on the same machine in the same run: nginx serving the same
directory for the GET cases, and single-core SHA3-256 for PUT and verification.
Figures are therefore reported as ratios, which hold from machine to machine.
"""
