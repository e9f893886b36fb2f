"""Where each of the 14 datasets comes from: the publisher's files and their SHA-256, the licence, or, for
datasets behind a login or a form, where to get them by hand. Data only; `training/download.py` acts on it.

A checksum is recorded only where a source for it exists (the comment beside it says which); `None`
means no published checksum is known: the download then prints the SHA-256 it computed, so a user can
pin it with `--checksums FILE`.
"""

from __future__ import annotations

from dataclasses import dataclass

ANOMALIB = "open-edge-platform/anomalib, src/anomalib/data/datamodules/image/{} (DownloadInfo)"
CC_BY_NC_SA = "CC BY-NC-SA 4.0 (non-commercial use only, share alike)"


@dataclass(frozen=True)
class Remote:
    """One file the publisher serves: its URL, the name it is stored under, its SHA-256 if known."""

    url: str
    filename: str
    sha256: str | None
    source: str  # where the URL and the checksum were read


@dataclass(frozen=True)
class Dataset:
    """A dataset as `prepare_data` names it; `files` empty means it must be fetched by hand (`manual`)."""

    name: str  # the key of training.prepare_data.LOADERS, and the folder under --root
    title: str
    licence: str
    files: tuple[Remote, ...] = ()
    inside: str = ""  # the folder inside the archives that is the dataset root ("" = the top level)
    manual: str = ""  # where to get it when there is no direct download
    homepage: str = ""


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "mvtec",
            "MVTec AD",
            CC_BY_NC_SA,
            (
                Remote(
                    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/download/"
                    "420938113-1629960298/mvtec_anomaly_detection.tar.xz",
                    "mvtec_anomaly_detection.tar.xz",
                    "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
                    ANOMALIB.format("mvtecad.py") + " at commit 275522211d14",
                ),
            ),
            homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        ),
        Dataset(
            "visa",
            "VisA (Visual Anomaly)",
            CC_BY_NC_SA,
            (
                Remote(
                    "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                    "VisA_20220922.tar",
                    "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
                    ANOMALIB.format("visa.py") + " at commit c47fa8e65997",
                ),
            ),
            homepage="https://github.com/amazon-science/spot-diff",
        ),
        Dataset(
            "btad",
            "BTAD (beanTech Anomaly Detection)",
            CC_BY_NC_SA,
            (
                Remote(
                    "https://avires.dimi.uniud.it/papers/btad/btad.zip",
                    "btad.zip",
                    "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
                    ANOMALIB.format("btech.py") + " at commit c42ce68f0cd7",
                ),
            ),
            inside="BTech_Dataset_transformed",
            homepage="https://avires.dimi.uniud.it/papers/btad/",
        ),
        Dataset(
            "ksdd",
            "KolektorSDD",
            CC_BY_NC_SA,
            (
                Remote(
                    "https://go.vicos.si/kolektorsdd",
                    "KolektorSDD.zip",
                    "65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
                    ANOMALIB.format("kolektor.py") + " at commit b419f8cfd7b3",
                ),
            ),
            homepage="https://www.vicos.si/resources/kolektorsdd/",
        ),
        Dataset(
            "isic",
            "ISIC 2016 (task 1, lesion segmentation), test split",
            "CC-0 for the ISIC Archive images; see the challenge's terms",
            (
                Remote(
                    "https://isic-challenge-data.s3.amazonaws.com/2016/ISBI2016_ISIC_Part1_Test_Data.zip",
                    "ISBI2016_ISIC_Part1_Test_Data.zip",
                    None,  # the challenge publishes no checksum
                    "the ISIC 2016 challenge's data page (challenge.isic-archive.com/data)",
                ),
                Remote(
                    "https://isic-challenge-data.s3.amazonaws.com/2016/ISBI2016_ISIC_Part1_Test_GroundTruth.zip",
                    "ISBI2016_ISIC_Part1_Test_GroundTruth.zip",
                    None,
                    "the ISIC 2016 challenge's data page (challenge.isic-archive.com/data)",
                ),
            ),
            homepage="https://challenge.isic-archive.com/data/",
        ),
        Dataset(
            "mpdd",
            "MPDD (Metal Parts Defect Detection)",
            CC_BY_NC_SA,
            manual="the publisher's OneDrive folder, linked from https://github.com/stepanje/MPDD",
        ),
        Dataset(
            "dtd",
            "DTD-Synthetic",
            "see the authors' release (Aota et al., WACV 2023)",
            manual="the authors' release of DTD-Synthetic (Aota et al., WACV 2023; a Google Drive archive)",
        ),
        Dataset(
            "dagm",
            "DAGM 2007",
            "see the publisher's terms (registration required)",
            manual="the DAGM 2007 competition page of Heidelberg University's HCI (behind a registration form)",
        ),
        Dataset(
            "headct",
            "Head CT - hemorrhage",
            "see the Kaggle page",
            manual="Kaggle (login): https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
        ),
        Dataset(
            "brainmri",
            "Brain MRI images for brain tumor detection",
            "see the Kaggle page",
            manual="Kaggle (login): https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
        ),
        Dataset(
            "br35h",
            "Br35H brain tumour detection 2020",
            "see the Kaggle page",
            manual="Kaggle (login): https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
        ),
        Dataset(
            "clinicdb",
            "CVC-ClinicDB",
            "see the publisher's terms",
            manual="PraNet's TestDataset archive (Google Drive), linked from https://github.com/DengPingFan/PraNet",
        ),
        Dataset(
            "colondb",
            "CVC-ColonDB",
            "see the publisher's terms",
            manual="PraNet's TestDataset archive (Google Drive), linked from https://github.com/DengPingFan/PraNet",
        ),
        Dataset(
            "tn3k",
            "TN3K (thyroid nodule ultrasound)",
            "see the publisher's terms",
            manual="the authors' Google Drive, linked from "
            "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
        ),
    )
}
