# Short name of ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py.
_base_ = './ssdlite/ssdlite_mobilenetv2-dnb-r16-goup_2xb64-30e_coco.py'
