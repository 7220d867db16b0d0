"""Other tools' formats: Keras 3 weight files (keras_h5) and Keras model configs (keras_import)."""
