package detector

import "github.com/transformaly/transformaly/models"

// hostScore replaces the graph's likelihoods and the method's score with
// ones made in float64 on the host (RunnerOptions.ScoreOnHost) from the
// graph's embeddings and block errors: the same functions fit calibrates
// with.
func hostScore(s *models.Scoring, res []Result) {
	for i := range res {
		r := &res[i]
		r.LLPretrained = s.Pretrained.LogLikelihood(r.Embedding)
		r.LLStudent = s.Student.LogLikelihood(r.BlockErrors)
		r.Score = -(r.LLPretrained + r.LLStudent)
	}
}
