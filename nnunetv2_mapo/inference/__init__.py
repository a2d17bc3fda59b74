"""``nnunetv2_mapo predict``: nnU-Net's predictor plus voxel-wise uncertainty maps (:mod:`.predictor`)."""
