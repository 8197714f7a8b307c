#!/bin/sh
# Deskpod images: never start services while packages are installed in an image build.
exit 101
