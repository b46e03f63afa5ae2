"""Paper-protocol metrics: restoration (PSNR/SSIM, BasicSR), wsol (wsolevaluation)."""
