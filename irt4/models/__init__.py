"""Models of irt4: the KL autoencoder, the Swin condition backbone, the conditional UNet."""
