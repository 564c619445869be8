from secure_ml.models.small_cnn import MNIST_MEAN, MNIST_STD, SmallCNN

__all__ = ["MNIST_MEAN", "MNIST_STD", "SmallCNN"]
