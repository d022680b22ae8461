# SegMAN-S on ADE20K: SegMAN-T's recipe with S widths, drop path 0.15.
_base_ = ['../tiny/segman_t_ade.py']
model = dict(
    backbone=dict(type='SegMANEncoder_s', pretrained='../pretrained/SegMAN_Encoder_s.pth.tar', drop_path_rate=0.15),
    decode_head=dict(in_channels=[64, 144, 288, 512], channels=144, feat_proj_dim=288))
evaluation = dict(_delete_=True, interval=8000, metric='mIoU', pre_eval=True)
