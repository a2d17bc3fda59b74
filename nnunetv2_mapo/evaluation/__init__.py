"""nnU-Net's evaluation plus HD95 and ASD in mm (``nnunetv2_mapo evaluate``).

- :mod:`.surface`: surface distances of one pair of masks (MONAI)
- :mod:`.folder`: a folder of predictions against a folder of references, nnU-Net's ``summary.json`` layout
"""
