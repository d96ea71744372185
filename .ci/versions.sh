# Versions the set-up installs, sourced by .ci/setup.sh and .ci/run (one place for each).
# pip: the venv's own can be old (3.10.13's 23.0.1, Ubuntu 22.04's 22.0.2); pip >= 23.1 resolves
# from PyPI's metadata files instead of downloading every candidate wheel (measured: on 3.10,
# pip 23.0.1 had not resolved '.[test]' with torch after 22 min; pip 26.3 did in 3 min).
PIP_REQ='pip>=25,<27'
TORCH_REQ='torch==2.13.0'
