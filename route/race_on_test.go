//go:build race

package route

// raceEnabled lets the large statistical tests skip under -race: they are
// single-goroutine, the plain run covers them, and the race detector makes
// them 10× slower.
const raceEnabled = true
