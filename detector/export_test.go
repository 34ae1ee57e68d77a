package detector

import "github.com/transformaly/transformaly/models"

// SetInlineFits replaces the rule that sends models inline or through a
// private copy, for tests of the copy path; it returns the undo.
func SetInlineFits(fits func(models.ModelFile) bool) (restore func()) {
	old := inlineFits
	inlineFits = fits
	return func() { inlineFits = old }
}

// ProviderSettings exposes the options each provider is given.
var ProviderSettings = providerSettings
