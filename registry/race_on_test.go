//go:build race

package registry_test

// raceEnabled: the race detector maps shadow memory for the whole address
// space, which a child under RLIMIT_AS cannot do.
const raceEnabled = true
