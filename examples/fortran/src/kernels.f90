! Vectorizable Fortran kernels: the bake decides their vector width.
module kernels
  implicit none
contains
  subroutine axpy(n, a, x, y)
    integer, intent(in) :: n
    real(8), intent(in) :: a, x(n)
    real(8), intent(inout) :: y(n)
    integer :: i
    do i = 1, n
      y(i) = a * x(i) + y(i)
    end do
  end subroutine axpy

  subroutine jacobi(n, u, v)
    integer, intent(in) :: n
    real(8), intent(in) :: u(n)
    real(8), intent(out) :: v(n)
    integer :: i
    v(1) = u(1)
    v(n) = u(n)
    do i = 2, n - 1
      v(i) = 0.5d0 * u(i) + 0.25d0 * (u(i - 1) + u(i + 1))
    end do
  end subroutine jacobi
end module kernels
