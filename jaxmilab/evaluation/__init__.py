"""Paper-protocol metrics and every method's streaming evaluator: restoration (PSNR/SSIM,
BasicSR), denoising (OPD), segmentation (mIoU, Dice, HD95 / ASD; CDSP, MACL fine-tuning),
pretraining (MACL), wsol (wsolevaluation)."""
