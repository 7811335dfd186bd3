"""The ImageNet channel statistics that the data pipeline normalises frames with, and that the backbone undoes
before its VAE and CLIP encoders (which expect [0, 1] and CLIP statistics)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
