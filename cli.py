#!/usr/bin/env python3
"""Run specc's command line from a checkout: `python cli.py summary specs/digits_cnn.yaml`."""

from specc.cli import main

if __name__ == "__main__":
    main()
