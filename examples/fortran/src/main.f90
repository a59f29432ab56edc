program relax
  use kernels
  implicit none
  integer, parameter :: n = 4096
  real(8) :: u(n), v(n), x(n)
  integer :: i, it, iters
  character(len=32) :: arg
  real(8) :: checksum
  interface
    function wall_seconds() bind(c, name="wall_seconds")
      use iso_c_binding, only: c_double
      real(c_double) :: wall_seconds
    end function
  end interface
  real(8) :: t0

  iters = 200
  if (command_argument_count() >= 1) then
    call get_command_argument(1, arg)
    read (arg, *) iters
  end if
  do i = 1, n
    u(i) = sin(real(i, 8) * 0.01d0)
    x(i) = 1.0d0 / real(i, 8)
  end do
  t0 = wall_seconds()
  do it = 1, iters
    call jacobi(n, u, v)
    call axpy(n, 1.0d-3, x, v)
    u = v
  end do
  checksum = sum(u)
  write (0, '(A, F8.3, A)') 'relax: ', wall_seconds() - t0, ' s'
  write (*, '(A, I0, A, F0.6)') 'iterations=', iters, ' checksum=', checksum
end program relax
