"""Regional composition: several concepts in one image, each denoised in its own region."""
