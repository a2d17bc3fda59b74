"""The ``nnunetv2_mapo`` command and its sub-commands; each imports what it uses when it runs."""
