package feature_test

import (
	"fmt"

	"github.com/signalforge/signalforge/feature"
)

func ExampleSchema() {
	s, err := feature.NewSchema([]string{"rsi_14", "macd"})
	if err != nil {
		panic(err)
	}
	row := feature.Row{Schema: s, Values: []float64{65, 0.5}}
	j, _ := s.Index("macd")
	v, _ := row.Value("rsi_14")
	fmt.Println(j, row.Values[j], v)
	// Output: 1 0.5 65
}
