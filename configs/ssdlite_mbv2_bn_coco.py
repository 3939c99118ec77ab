# Short name of ssdlite/ssdlite_mobilenetv2-bn_2xb64-30e_coco.py.
_base_ = './ssdlite/ssdlite_mobilenetv2-bn_2xb64-30e_coco.py'
