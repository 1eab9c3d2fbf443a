"""The speakers of TIMIT's core test set and of Halberstadt's development set, as published."""

# The 24 speakers of the core test set: two men and one woman from each of the eight dialect regions
# (DR1..DR8 in this order), as listed in the corpus documentation (TIMIT's TESTSET.DOC, "core test set");
# with their SI and SX sentences, 24 x 8 = 192 utterances. All are in the TEST folder.
CORE_TEST_SPEAKERS = frozenset({
    "MDAB0", "MWBT0", "FELC0",  # DR1
    "MTAS1", "MWEW0", "FPAS0",  # DR2
    "MJMP0", "MLNT0", "FPKT0",  # DR3
    "MLLL0", "MTLS0", "FJLM0",  # DR4
    "MBPM0", "MKLT0", "FNLP0",  # DR5
    "MCMJ0", "MJDH0", "FMGD0",  # DR6
    "MGRT0", "MNJM0", "FDHC0",  # DR7
    "MJLN0", "MPAM0", "FMLD0",  # DR8
})

# The 50 speakers of the development set of A. K. Halberstadt, "Heterogeneous Acoustic Measurements and
# Multiple Classifiers for Speech Recognition", PhD thesis, MIT, 1998 (the 400-utterance set drawn from
# the complete test set without the core test set); the same list is published as the development
# speaker list of the Kaldi TIMIT recipe (egs/timit/s5/conf/dev_spk.list). 50 x 8 = 400 utterances.
DEV_SPEAKERS = frozenset({
    "FAKS0", "FDAC1", "FJEM0", "MGWT0", "MJAR0", "MMDB1", "MMDM2", "MPDF0", "FCMH0", "FKMS0",
    "MBDG0", "MBWM0", "MCSH0", "FADG0", "FDMS0", "FEDW0", "MGJF0", "MGLB0", "MRTK0", "MTAA0",
    "MTDT0", "MTHC0", "MWJG0", "FNMR0", "FREW0", "FSEM0", "MBNS0", "MMJR0", "MDLS0", "MDLF0",
    "MDVC0", "MERS0", "FMAH0", "FDRW0", "MRCS0", "MRJM4", "FCAL1", "MMWH0", "FJSJ0", "MAJC0",
    "MJSW0", "MREB0", "FGJD0", "FJMG0", "MROA0", "MTEB0", "MJFC0", "MRJR0", "FMML0", "MRWS1",
})

# Utterances per split in the complete corpus: 462 training speakers x 8 (SA dropped), 50 x 8, 24 x 8.
EXPECTED_SIZES = {"train": 3696, "valid": 400, "test": 192}
