# SegMAN-S on Cityscapes: note channels=152 (144 on ADE20K/COCO), as in the original.
_base_ = ['../tiny/segman_t_cityscapes.py']
model = dict(
    backbone=dict(type='SegMANEncoder_s', pretrained='../pretrained/SegMAN_Encoder_s.pth.tar', drop_path_rate=0.2),
    decode_head=dict(in_channels=[64, 144, 288, 512], channels=152, feat_proj_dim=288))
evaluation = dict(_delete_=True, interval=4000, metric='mIoU', pre_eval=True, save_best='mIoU')
