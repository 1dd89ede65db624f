# Plots of one bench/run.sh run (data files written by bench/summarize.py).
# gnuplot -e "datadir='DIR'; outdir='docs/bench'" bench/plots.gp
# (add fmt='png' for PNG files instead of SVG)

if (!exists("fmt")) fmt = 'svg'
if (fmt eq 'png') {
    set terminal pngcairo size 800,480 font 'sans,10' background rgb 'white'
} else {
    set terminal svg size 800,480 dynamic font 'sans,12' background rgb 'white'
}
set grid ytics
set key top right

set output outdir.'/throughput.'.fmt
set title 'Live pub/sub, 1 publisher -> 1 subscriber, loopback (medians)'
set xlabel 'payload bytes'
set ylabel 'delivered messages / s'
set logscale x 2
set xrange [10:6500]
set xtics ('16' 16, '256' 256, '1024' 1024, '4096' 4096)
set yrange [0:*]
set format y '%.1s%c'
plot datadir.'/throughput.dat' using 1:2 with linespoints lw 2 pt 7 title 'ringbus', \
     '' using 1:3 with linespoints lw 2 pt 5 title 'NATS', \
     '' using 1:4 with linespoints lw 2 pt 9 title 'Redis'

set output outdir.'/latency.'.fmt
unset logscale x
set xrange [*:*]
set xtics auto
set key top left
set title 'Publish -> deliver latency, 256 B at 10 000 msg/s, from the intended send time (medians)'
set xlabel 'percentile'
set ylabel 'microseconds (log)'
set logscale y
set yrange [10:100000]
set format y '%g'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
plot datadir.'/latency.dat' using 2:xtic(1) title 'ringbus', \
     '' using 3 title 'NATS', \
     '' using 4 title 'Redis'
