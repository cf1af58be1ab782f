"""Other frameworks' net files to our YAML nets (`python -m engine convert`).

    cudaconvnet  cuda-convnet / cuda-convnet2 layer-definition + layer-parameter files (.cfg)
    caffe        a Caffe net (.prototxt), with its solver file optionally
    prototxt     the protobuf text-format reader the Caffe converter uses
    checks       shapes and parameter counts by the source's rules against our engine's
    writer       the YAML text both write

Nothing here prints or writes files: each converter returns a Conversion (the YAML text,
notices for the user, the layers, the parameter count) or raises ConvertError, a
ConfigError naming the file, line, layer and key.
"""
from engine.convert.caffe import convert_caffe, parse_caffe_input
from engine.convert.common import Conversion, Converted, ConvertError
from engine.convert.cudaconvnet import (Schedule, convert, parse_input_shape, parse_neuron, parse_schedule,
                                        read_ini)

__all__ = ["Conversion", "Converted", "ConvertError", "Schedule", "convert", "convert_caffe",
           "parse_caffe_input", "parse_input_shape", "parse_neuron", "parse_schedule", "read_ini"]
