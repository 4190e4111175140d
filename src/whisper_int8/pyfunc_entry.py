"""MLflow models-from-code entry point: the file ``mlflow.pyfunc.load_model`` runs to build the model.

Logged instead of a pickled :class:`~whisper_int8.pyfunc_model.WhisperPyfunc`, so loading a registered
version unpickles nothing: this code (with the ``whisper_int8`` package logged beside it) builds the
model, the logged ``model_config`` gives its decoding options, and the weights are plain tensors.
"""

from mlflow.models import set_model

from whisper_int8.pyfunc_model import WhisperPyfunc

set_model(WhisperPyfunc())
